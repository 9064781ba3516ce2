"""
The studies on the exact testbed, each as one runner and one report module:

    sampler_run.py / sampler_report.py    every sampler and step count against the exact
                                          posterior (scripts/sampler_study.py)
    testbed_run.py / testbed_report.py    the mean, variance and PC models trained to a budget,
                                          every checkpoint scored in closed form
                                          (scripts/testbed_study.py)

A runner does the work and caches it per configuration (a rerun continues); a report reads
those results and writes results.md, the figures and the tables. Scores come from the one
scorer, testbed.scoring.
"""
