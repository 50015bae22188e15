"""Peer models the benchmark times side by side with egnn_com's own: the implementations a user would
otherwise run, written out at the same layer widths so one process can time both on the same batches."""
