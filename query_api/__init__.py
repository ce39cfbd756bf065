"""The query API: page-view stats for dashboards and BI tools, from Redis, exact from MongoDB."""
