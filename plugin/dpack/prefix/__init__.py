"""prefix"""
