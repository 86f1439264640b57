"""Alternate routes: a real road network (OSM via SUMO), live edge weights, reroute decisions."""
