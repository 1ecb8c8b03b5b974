"""quorumkv.sim: deterministic simulation of whole clusters in one process."""
