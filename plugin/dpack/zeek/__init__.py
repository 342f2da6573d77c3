"""zeek"""
