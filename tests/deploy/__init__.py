"""Static checks of the deployment files (docker/, docker-compose.yml, deploy/, docs/deploy.md)."""
