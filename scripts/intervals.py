"""Mean and 95% Student-t interval over seeds, as the results tables print them.

Imported by the table scripts in this folder (condition_table.py, intersectional_table.py,
postprocess_summary.py); Python puts a script's own folder on the import path.
"""

import math
import statistics

# t_{0.975, df} for df = 1..30; beyond 30 the df = 30 value is used (a slightly wider interval).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def interval(values, digits=3):
    """`mean ± half-width` of the 95% t interval; the mean alone for one value."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.{digits}f}"
    t = T975[min(len(values) - 1, len(T975)) - 1]
    h = t * statistics.stdev(values) / math.sqrt(len(values))
    return f"{m:.{digits}f} ± {h:.{digits}f}"
