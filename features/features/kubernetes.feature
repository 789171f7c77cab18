Feature: Kubernetes container managers
  A cluster whose container manager is of type "kubernetes" has its hosts
  registered as nodes (named by the host's address); rolling operations cordon
  and drain each node before acting, wait for it to be Ready after and
  uncordon it, and never leave a node cordoned that was not cordoned before.
  No Kubernetes API server can be installed here: these scenarios run against
  the fake API server of commissaire-fakekube, which the suite starts and which
  the server also asks to review bearer tokens.

  Scenario: A kubernetes container manager is stored with its options
    Given a kubernetes container manager $cm on the fake Kubernetes API
    When I GET /api/v0/containermanager/$cm
    Then the response field "/type" is "kubernetes"

  Scenario: A bearer token the API's TokenReview accepts authenticates
    Given the fake Kubernetes API accepts the token $tok for the user "alice" in the group "operators"
    And I use the bearer token $tok
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 201
    When I GET /api/v0/networks
    Then the response status is 200

  Scenario: A bearer token of a read-only group may read but not write
    Given the fake Kubernetes API accepts the token $tok for the user "bob" in the group "viewers"
    And I use the bearer token $tok
    When I GET /api/v0/networks
    Then the response status is 200
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 403

  Scenario: A bearer token the TokenReview rejects gets 401
    Given I use the bearer token $unknown
    When I GET /api/v0/networks
    Then the response status is 401
    And the response header "www-authenticate" starts with "Basic"

  @hosts
  Scenario: A host of a managed cluster is registered as a node and shows its status
    Given a kubernetes container manager $cm on the fake Kubernetes API
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    And a test host $h
    When I PUT /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    Then the response status is 201
    And within 60 seconds host $h has status "active"
    And the fake Kubernetes API has the node $h
    When I GET /api/v0/host/$h/status
    Then the response contains:
      """
      {"host": {"status": "active"}, "container_manager": {"kind": "Node", "metadata": {"name": "$h"}}}
      """
    When I DELETE /api/v0/cluster/$cluster/hosts/$h
    Then the response status is 200
    And the fake Kubernetes API has no node $h

  @hosts
  Scenario: A rolling restart cordons, drains, waits for Ready and uncordons each node in turn; deleting the cluster removes only its nodes
    Given a kubernetes container manager $cm on the fake Kubernetes API
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    And a test host $a
    And a test host $b
    And I have created /api/v0/host/$a with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    And I have created /api/v0/host/$b with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    And within 60 seconds host $a has status "active"
    And within 60 seconds host $b has status "active"
    And the fake Kubernetes API has the pod $web on the node $a
    And the fake Kubernetes API has the pod $db on the node $b
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"drain_retry_seconds": 0.2}
      """
    Then the response status is 201
    And within 120 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"
    And the response field "/cordoned" is []
    And the fake Kubernetes API log shows, for $a then $b, the cordon, the evictions, the node read and the uncordon
    And the node $a is schedulable in the fake Kubernetes API
    And the node $b is schedulable in the fake Kubernetes API
    And the pod $web is gone from the node $a
    And the fake Kubernetes API also has a node $elsewhere
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 200
    And the fake Kubernetes API has no node $a
    And the fake Kubernetes API has no node $b
    And the fake Kubernetes API has the node $elsewhere

  @hosts
  Scenario: A drain blocked by a disruption budget with policy force deletes the pod
    Given a kubernetes container manager $cm on the fake Kubernetes API
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    And a test host $h
    And I have created /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    And within 60 seconds host $h has status "active"
    And the fake Kubernetes API has the pod $guarded on the node $h
    And a disruption budget blocks every eviction of the pod $guarded
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"drain_policy": "force", "drain_timeout_seconds": 1, "drain_retry_seconds": 0.2}
      """
    Then the response status is 201
    And within 120 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"
    And the pod $guarded is gone from the node $h
    And the node $h is schedulable in the fake Kubernetes API

  @hosts
  Scenario: A failed operation leaves no node cordoned that was not cordoned before
    Given a kubernetes container manager $cm on the fake Kubernetes API
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    And a test host $a
    And a test host $b
    And I have created /api/v0/host/$a with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    And I have created /api/v0/host/$b with:
      """
      {"ssh_priv_key": "$TEST_KEY", "remote_user": "root", "cluster": "$cluster"}
      """
    And within 60 seconds host $a has status "active"
    And within 60 seconds host $b has status "active"
    And an operator cordoned the node $a in the fake Kubernetes API
    And the fake Kubernetes API has the pod $guarded on the node $b
    And a disruption budget blocks every eviction of the pod $guarded
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"drain_policy": "fail", "drain_timeout_seconds": 1, "drain_retry_seconds": 0.2}
      """
    Then the response status is 201
    And within 120 seconds GET /api/v0/cluster/$cluster/restart has "failed" at "/status"
    And the response field "/failed_hosts" is ["$b"]
    And the response field "/reason" mentions "disruption budget"
    And the response field "/cordoned" is []
    And the node $a is cordoned in the fake Kubernetes API
    And the node $b is schedulable in the fake Kubernetes API
    And the pod $guarded is still on the node $b
