"""num_threads=0 (auto): 1 torch thread for the LSTM head, all cores when a backbone runs; a number is obeyed."""

import torch

from bertpooled.config import load_config
from bertpooled.run import runtime


def test_auto_threads_give_the_head_one_thread_and_a_backbone_all_cores():
    assert runtime.threads_for(load_config(overrides={"mode": "pool"})) == 1
    assert runtime.threads_for(load_config(overrides={"features": "embeddings"})) == 1
    assert runtime.threads_for(load_config(overrides={"features": "encoder"})) == runtime.ALL_THREADS


def test_an_explicit_thread_count_is_obeyed_and_set_on_torch():
    before = torch.get_num_threads()
    try:
        config = load_config(overrides={"num_threads": 2, "features": "embeddings"})
        assert runtime.threads_for(config) == 2
        runtime.Runtime.resolve(config).start()
        assert torch.get_num_threads() == 2
        runtime.Runtime.resolve(load_config()).start()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_freed_memory_is_kept_on_glibc_and_left_alone_elsewhere(monkeypatch):
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime.keep_freed_memory() is True
        assert runtime.keep_freed_memory() is True  # idempotent
    monkeypatch.setenv("BERTPOOLED_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv("BERTPOOLED_KEEP_FREED_MEMORY")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert runtime.keep_freed_memory() is False
