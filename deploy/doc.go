// Package deploy holds no code: it is the home of fleetgate's deployment files (the container
// image, compose, Kubernetes and systemd) and of the tests that keep them consistent.
package deploy
