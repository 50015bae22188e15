"""Trainyard dashboard launcher: `streamlit run tools/dashboard/app.py -- --runs-dir outputs`.

The app lives in the cabruca package (`cabruca.dashboard.app`) so an installed wheel can serve it too
(`python -m cabruca.monitor`); this file only runs it from a workspace checkout.
"""

from cabruca.dashboard.app import main

main()
