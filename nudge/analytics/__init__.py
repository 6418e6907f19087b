"""Analytics: report figures over the message log (`metrics`), A/B verdicts (`abtest`) and the
report service the API and the dashboard read (`reports`)."""
