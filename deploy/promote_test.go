package deploy

import (
	"encoding/json"
	"fmt"
	"os/user"
	"path/filepath"
	"testing"
)

// TestAnsibleCanaryAndFleet renders the role's config for each
// dockward_role, validated by the real `dockward check` as the role does:
// the canary's services promote, the fleet's watch the promoted tag.
func TestAnsibleCanaryAndFleet(t *testing.T) {
	playbook := need(t, "ansible-playbook", "install the Debian package ansible-core")
	goTool := need(t, "go", "install Go (go test puts it in PATH)")
	root := repoRoot(t)
	ansibleDir := filepath.Join(root, "deploy", "ansible")
	tmp := t.TempDir()
	env := ansibleEnv(filepath.Join(tmp, "home"), filepath.Join(ansibleDir, "ansible.cfg"))
	binary := filepath.Join(tmp, "bin", "dockward")
	mustRun(t, root, nil, goTool, "build", "-buildvcs=false", "-o", binary, "./cmd/dockward")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	group, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Fatal(err)
	}
	compose := filepath.Join(tmp, "docker-compose.yml")
	writeFile(t, compose, "services:\n  web:\n    image: localhost:5000/team/myapp:latest\n", 0o644)
	vars := filepath.Join(tmp, "vars.yml")
	writeFile(t, vars, fmt.Sprintf(`
dockward_services:
  - {name: myapp, image: "localhost:5000/team/myapp:latest", compose_file: %q, compose_project: myapp, auto_update: true}
  - {name: worker, image: "team/worker", compose_file: %q, compose_project: worker, auto_update: true}
  - {name: db, compose_file: %q, compose_project: db, auto_heal: true}
`, compose, compose, compose), 0o600)

	type service struct {
		Name         string  `json:"name"`
		Image        string  `json:"image"`
		PromoteTag   string  `json:"promote_tag"`
		PromoteAfter float64 `json:"promote_after"`
	}
	tests := []struct {
		role string
		want []service
	}{
		{"", []service{{Name: "myapp", Image: "localhost:5000/team/myapp:latest"}, {Name: "worker", Image: "team/worker"}, {Name: "db"}}},
		{"canary", []service{
			{Name: "myapp", Image: "localhost:5000/team/myapp:latest", PromoteTag: "stable", PromoteAfter: 120},
			{Name: "worker", Image: "team/worker", PromoteTag: "stable", PromoteAfter: 120},
			{Name: "db"},
		}},
		{"fleet", []service{{Name: "myapp", Image: "localhost:5000/team/myapp:stable"}, {Name: "worker", Image: "team/worker:stable"}, {Name: "db"}}},
	}
	for _, tt := range tests {
		t.Run("role "+tt.role, func(t *testing.T) {
			dest := filepath.Join(tmp, "root-"+tt.role)
			out, err := run(t, ansibleDir, env, playbook,
				"-i", "localhost,", "-c", "local", "playbooks/dockward.yml",
				"-e", "dockward_hosts=all", "-e", "ansible_become=false",
				"-e", "dockward_root="+dest, "-e", "dockward_manage_service=false",
				"-e", "dockward_binary_src="+binary,
				"-e", "dockward_owner="+me.Username, "-e", "dockward_group="+group.Name,
				"-e", "dockward_role="+tt.role, "-e", "dockward_promote_after=120",
				"-e", "@"+vars)
			if err != nil {
				t.Fatalf("ansible-playbook with dockward_role=%q: %v\n%s", tt.role, err, out)
			}
			var cfg struct{ Services []service }
			if err := json.Unmarshal(readFile(t, filepath.Join(dest, "etc/dockward/config.json")), &cfg); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(cfg.Services) != fmt.Sprint(tt.want) {
				t.Errorf("services with dockward_role=%q:\n got %+v\nwant %+v", tt.role, cfg.Services, tt.want)
			}
		})
	}
	t.Run("unknown role", func(t *testing.T) {
		out, err := run(t, ansibleDir, env, playbook,
			"-i", "localhost,", "-c", "local", "playbooks/dockward.yml",
			"-e", "dockward_hosts=all", "-e", "ansible_become=false",
			"-e", "dockward_root="+filepath.Join(tmp, "root-bad"), "-e", "dockward_manage_service=false",
			"-e", "dockward_binary_src="+binary, "-e", "dockward_role=leader", "-e", "@"+vars)
		if err == nil {
			t.Fatalf("dockward_role=leader was accepted:\n%s", out)
		}
	})
}
