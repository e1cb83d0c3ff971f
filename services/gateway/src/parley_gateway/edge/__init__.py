"""What stands between a client and a conversation: access keys, client identity, limits, the guard, audit."""
