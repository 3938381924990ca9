"""Files torchhouse writes and reads: safetensors + JSON, atomic writes, the rules for files
it did not write (`safety`), the admit-only ``.pt2`` checker (`pt2_check`, `pt2_operators`)
and exported programs (`export`). Nothing here unpickles.
"""
