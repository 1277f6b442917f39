import os
import sys

# Party processes are spawned: they import the test modules and `multiparty` from here.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
