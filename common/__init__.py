"""Small helpers every room may import (it imports no other room)."""
