"""Tables and figures: sample grids now; tables and plots from aggregated CSVs as the workflow grows."""
