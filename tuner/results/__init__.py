"""Results: a finished study's trials, how each ended and its diagnosis, the Pareto front, the
summary, exported configs and their retraining, figures and the dashboard's data."""
