"""bertpooled: does a pooling layer cut the compute of a language model without costing accuracy?"""

__version__ = "0.1.0"
