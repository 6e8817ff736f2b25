"""Benchmarks: the product against raw Ray, Ray Serve and polling, on this machine (`make bench`)."""
