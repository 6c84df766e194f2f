"""Serving: Ray Serve applications for chosen Pareto models, and their HTTP gateway."""
