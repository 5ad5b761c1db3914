"""kelp conformance suite: one set of behaviour tests every transport must pass, on both faces."""
