"""Offline measurements of the router's parts on M4A1 and on a user's prompts.

confidence (estimators against answer scores), agreement (sampling agreement), calibrate
(the escalation threshold), gap (fit and evaluation of the quality-gap predictor), metrics
(the one AUROC and Spearman). Nothing here is imported by the graph, and the CLI imports
these modules inside its commands, so ``--help`` never pays for scikit-learn.
"""
