"""Peer models the benchmark trains side by side with cabruca's own: the model a user would otherwise train,
written out at its usual widths so one process can time both on the same tiles."""
