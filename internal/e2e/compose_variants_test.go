package e2e

import "testing"

// composeVariant is a compose that dockward runs: the v2 plugin, found by
// detection, or docker-compose v1 named in docker.compose_command.
type composeVariant struct {
	name    string
	command []string // docker.compose_command; nil for detection
}

var composeVariants = []composeVariant{
	{"v2", nil},
	{"v1", []string{"docker-compose"}},
}

// underEachCompose runs a core scenario under each compose, as parallel
// subtests named after it; the scenario's name gets the variant as suffix.
// The scenario's start checks that dockward runs the compose it was given.
func underEachCompose(t *testing.T, name string, run func(t *testing.T, s *scenario)) {
	t.Helper()
	for _, v := range composeVariants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			s := newScenario(t, name+"-"+v.name)
			s.composeCmd = v.command
			run(t, s)
		})
	}
}
