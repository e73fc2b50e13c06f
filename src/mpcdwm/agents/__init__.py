"""Offline base agents (ReBRAC, IQL, TD3+BC): training runs, checkpoints, loading."""
