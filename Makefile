# Two commands on a fresh machine (see README):
#   make demo   install if needed, then start the app on the demo data
#   make test   install if needed, then run the tests (what .ci/run calls)
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test install browser screenshot

demo: $(INSTALLED)
	$(VENV)/bin/streamlit run app.py --server.address "$${ROSETTA_ADDRESS:-127.0.0.1}"

test: $(INSTALLED) browser
	$(PYTHON) -m pytest -q

install: $(INSTALLED)

$(INSTALLED): requirements.txt requirements-nodeps.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# The browser test drives Debian's chromium (Playwright cannot download browsers offline).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Refresh the README screenshot (tests never write into the repository).
screenshot: $(INSTALLED) browser
	ROSETTA_SCREENSHOT=assets/dashboard.jpg $(PYTHON) -m pytest -q tests/test_browser.py
