"""The HTML pages: a run's report and a project's trend, with plotly.js written once beside them.

    run_data.py    what a run's page shows (pure, and its reads)
    trend_data.py  what the trend page shows of each cycle (pure)
    frame.py       plotly on demand, plotly.js beside the pages, the HTML frame, writing
    run_page.py    the run's page
    trend_page.py  the trend page, and the run pages it links to
"""
