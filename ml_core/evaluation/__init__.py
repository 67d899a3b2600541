"""Evaluation stage: protocols, test-set metrics and calibration, and the leaderboard."""
