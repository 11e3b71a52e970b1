"""One broker suite (base.BrokerSuite), subclassed per broker, with each broker's own tests."""
