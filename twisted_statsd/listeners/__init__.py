"""Listeners: sockets that receive DogStatsD packets and hand them to packet buffers."""
