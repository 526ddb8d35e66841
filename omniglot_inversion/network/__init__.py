"""The split network: the post's `models` (TargetModel with ``mobile_step`` / ``server_step``,
the AttackModel decoder, the complete model for DP), the one TF2 training loop (`training`), the
cut and its HDF5 files (`interception`) and a user's own Keras stage (`user_stage`).

May import `io` and `defences` (a defence at the cut acts inside the model); never DP, attacks,
measurement or pipelines.
"""
