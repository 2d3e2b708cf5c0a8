"""The pure core: parsing, enrichment and aggregation, free of Twisted and of clocks."""
