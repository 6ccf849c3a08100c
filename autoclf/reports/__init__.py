"""Self-contained HTML reports (plotly embedded, images inline): they open offline."""
