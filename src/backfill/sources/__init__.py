"""Sources: clients that stages use to read from the outside world."""
