"""Tests of the library layer above Producer/Consumer: SimpleQueue, ConsumerMixin, pools, common helpers."""
