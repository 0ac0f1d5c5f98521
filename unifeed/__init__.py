"""unifeed."""
