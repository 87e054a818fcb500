"""What several studies here share: the machine line, timing loops, synthetic inputs, measurement in turns."""
