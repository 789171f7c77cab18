@hosts
Feature: Investigating hosts
  A host added through the API is investigated over SSH: the investigator logs
  in with the host's credentials, pins the host's SSH key, gathers its facts and
  records where it ended: "disassociated", "active" (a member of a cluster whose
  container manager registered it) or "failed" with the reason. These scenarios
  run against the test bed's real sshd test hosts.

  Scenario: A host outside any cluster ends disassociated with its facts
    Given a test host $h
    When I PUT /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root"}
      """
    Then the response status is 201
    And within 60 seconds host $h has status "disassociated"
    And the response field "/os" is "debian"
    And the response has a positive number at "/cpus"
    And the response has a positive number at "/memory"
    And the response has a positive number at "/space"
    And the response field "/reason" is ""
    And the test host $h has a file "/etc/default/flanneld" that mentions "written by Commissaire's bootstrap"
    And the test host $h has a file "/var/lib/testbed-systemd/journal" that mentions "docker"
    When I GET /api/v0/host/$h/hostkey
    Then the response field "/ssh_host_key" starts with "ssh-ed25519 "

  Scenario: A host in a cluster with a container manager ends active
    Given I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    And a test host $h
    When I PUT /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "commissaire", "cluster": "$cluster"}
      """
    Then the response status is 201
    And within 60 seconds host $h has status "active"
    When I GET /api/v0/host/$h/status
    Then the response contains:
      """
      {"host": {"status": "active"}, "type": "host_only", "container_manager": {"node": "$h", "status": "ok"}}
      """

  Scenario: A key the host does not accept ends failed with the reason
    Given a test host $h
    When I PUT /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$OTHER_KEY", "remote_user": "root"}
      """
    Then the response status is 201
    And within 60 seconds host $h has status "failed"
    And the response field "/reason" mentions "authentication"

  Scenario: An address where no SSH server answers ends failed
    Given an address $a where no SSH server answers
    When I PUT /api/v0/host/$a with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root"}
      """
    Then the response status is 201
    And within 60 seconds host $a has status "failed"
    And the response field "/reason" mentions "unreachable"

  Scenario: A changed host key is refused until the operator trusts it
    Given a test host $h
    And I have created /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root"}
      """
    And within 60 seconds host $h has status "disassociated"
    When I GET /api/v0/host/$h/hostkey
    And I remember the response field "/ssh_host_key" as $old_key
    When the test host $h gets a new host key
    Then within 30 seconds host $h has status "failed" with a reason that mentions "host key"
    When I DELETE /api/v0/host/$h/hostkey
    Then the response status is 200
    And within 60 seconds host $h has status "disassociated"
    When I GET /api/v0/host/$h/hostkey
    Then the response field "/ssh_host_key" differs from $old_key

  Scenario: The watcher fails a host that goes down and restores it when it is back
    Given a test host $h
    And I have created /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root"}
      """
    And within 60 seconds host $h has status "disassociated"
    When the test host $h goes down
    Then within 30 seconds host $h has status "failed" with a reason that mentions "unreachable"
    When the test host $h comes back
    Then within 30 seconds host $h has status "disassociated"
    And the response field "/reason" is ""
