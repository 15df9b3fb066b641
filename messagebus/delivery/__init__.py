"""Running deliveries: their states, the policy that decides, the runner that does."""
