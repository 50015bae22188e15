"""Trainyard's dashboard: the runs of every package under one runs root."""
