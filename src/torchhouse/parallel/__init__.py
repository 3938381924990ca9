"""Several processes: the process group under torchrun (`distributed`), `launch` from a
notebook, and the strategies a fit runs with (`strategies`: one process, DDP, FSDP2).
"""
