"""Sessions across OS processes and machines: `ClusterNode` on a `PostgresStore`."""
