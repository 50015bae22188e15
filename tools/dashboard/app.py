"""The Trainyard dashboard from a workspace checkout: `streamlit run tools/dashboard/app.py -- --runs-root outputs`.

The app is the trainyard-dashboard package's (`dashboard.app`), which the installed command
`trainyard-dashboard --runs-root outputs` serves too; this file only runs it by path.
"""

from dashboard.app import main

main()
