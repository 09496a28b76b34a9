"""Great Expectations suites, one module per dataset, and the runner that validates Spark DataFrames in place."""
