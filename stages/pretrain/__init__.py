"""Pre-training of small teachers (and their held-out scores) for the quickstart and the replication."""
