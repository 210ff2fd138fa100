"""Pure decision code: no kopf, kubernetes or network imports; `now` is always a parameter."""
