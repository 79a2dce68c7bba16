"""Research code that measures whether CSFR helps (docs/study.md); not part of the csfr package."""
