"""CLI commands of the core (train, evaluate); stages keep theirs next to their code."""
