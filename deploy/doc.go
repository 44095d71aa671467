// Package deploy holds no code: it is the home of deploy_test.go, which
// checks the deployment artifacts in this directory with the real tools
// (systemd-analyze, ansible-playbook, ansible-lint, promtool).
//
//	systemd/dockward.service   the systemd unit
//	ansible/                   playbook and role installing binary, config and unit
//	prometheus/                alerting rules, their unit tests, a scrape config
//	grafana/dashboard.json     the Grafana dashboard
package deploy
