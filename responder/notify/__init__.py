"""The notifier: an incident's milestones told to people (Slack, a generic JSON webhook)."""
