Feature: Cluster operations
  Deploy, upgrade and restart run on a whole cluster; their records say how far
  they got. (Starting one needs the cluster exec service, which runs only with
  the host services: the scenarios without the @hosts tag cover reading records
  and refusing bad requests.)

  Scenario Outline: A cluster without a <operation> record
    Given I have created /api/v0/cluster/$cluster
    When I GET /api/v0/cluster/$cluster/<operation>
    Then the response status is 404
    And the error message mentions "<operation>"

    Examples:
      | operation |
      | deploy    |
      | upgrade   |
      | restart   |

  Scenario Outline: No <operation> on a cluster that does not exist
    When I PUT /api/v0/cluster/$missing/<operation>
    Then the response status is 404
    And the error message mentions "$missing"
    When I GET /api/v0/cluster/$missing/<operation>
    Then the response status is 404

    Examples:
      | operation |
      | upgrade   |
      | restart   |

  Scenario: A deploy needs the version to deploy
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/deploy
    Then the response status is 400
    And the error message mentions "version"
    When I PUT /api/v0/cluster/$cluster/deploy with:
      """
      {"version": ""}
      """
    Then the response status is 400
    And the error message mentions "version"
    When I PUT /api/v0/cluster/$cluster/deploy with:
      """
      {"version": 7}
      """
    Then the response status is 400
    And GET /api/v0/cluster/$cluster/deploy answers 404

  Scenario: An operation takes no options it does not know
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"parallel": 2}
      """
    Then the response status is 400
    And the error message mentions "parallel"

  @hosts
  Scenario: An operation starts with its knobs recorded
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"batch": "50%", "failure_budget": 1}
      """
    Then the response status is 201
    And the response field "/status" is "in_process"
    And the response field "/knobs" is {"batch": "50%", "failure_budget": 1}
    And the response field "/restarted" is []
    And the response field "/finished_at" is null

  Scenario Outline: Pausing, resuming or aborting an operation that never ran
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/restart/<control>
    Then the response status is 404

    Examples:
      | control |
      | pause   |
      | resume  |
      | abort   |

  @hosts
  Scenario: An operation that ended takes no pause or abort
    Given I have created /api/v0/cluster/$cluster
    And I have created /api/v0/cluster/$cluster/restart
    Then within 30 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"
    When I PUT /api/v0/cluster/$cluster/restart/abort
    Then the response status is 409
    And the error message mentions "not in process"

  Scenario Outline: A bad knob is refused naming it
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      <body>
      """
    Then the response status is 400
    And the error message mentions "<knob>"
    And GET /api/v0/cluster/$cluster/restart answers 404

    Examples:
      | body                          | knob                 |
      | {"batch": 0}                  | batch                |
      | {"batch": "150%"}             | batch                |
      | {"failure_budget": -1}        | failure_budget       |
      | {"soak_seconds": "soon"}      | soak_seconds         |
      | {"host_timeout_seconds": 0}   | host_timeout_seconds |
      | {"health_gate": "yes"}        | health_gate          |
      | {"drain_policy": "later"}     | drain_policy         |
      | {"drain_timeout_seconds": -1} | drain_timeout_seconds |
      | {"node_ready_timeout_seconds": "soon"} | node_ready_timeout_seconds |

  Scenario: Operation routes take no trailing slash
    Given I have created /api/v0/cluster/$cluster
    When I GET /api/v0/cluster/$cluster/restart/
    Then the response status is 404

  Scenario Outline: Retrying the failed hosts of a <operation> that never ran
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/<operation>/retry-failed
    Then the response status is 404
    When I PUT /api/v0/cluster/$missing/<operation>/retry-failed
    Then the response status is 404

    Examples:
      | operation |
      | deploy    |
      | restart   |

  @hosts
  Scenario: A restart within a failure budget, followed on the event stream, then its failed host retried
    Given I have created /api/v0/cluster/$cluster
    And a test host $up
    And a test host $down
    When I PUT /api/v0/host/$up with:
      """
      {"ssh_priv_key": "$TEST_KEY", "cluster": "$cluster"}
      """
    And I PUT /api/v0/host/$down with:
      """
      {"ssh_priv_key": "$TEST_KEY", "cluster": "$cluster"}
      """
    Then within 60 seconds host $up has status "disassociated"
    And within 60 seconds host $down has status "disassociated"
    When I follow the events of cluster $cluster
    And the test host $down goes down
    And I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"failure_budget": 1}
      """
    Then the response status is 201
    And within 300 seconds the event stream has shown "clusterexec.restart.finished"
    And the event stream has shown "clusterexec.restart.host_done" for $up
    And the event stream has shown "clusterexec.restart.host_failed" for $down
    And every event of the stream is about cluster $cluster
    When I GET /api/v0/cluster/$cluster/restart
    Then the response field "/status" is "finished"
    And the response field "/failed_hosts" is ["$down"]
    When the test host $down comes back
    And I PUT /api/v0/cluster/$cluster/restart/retry-failed
    Then the response status is 201
    And the response field "/status" is "in_process"
    And within 300 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"
    And the response field "/failed_hosts" is []
    And within 10 seconds the event stream has shown "clusterexec.restart.host_done" for $down
    When I PUT /api/v0/cluster/$cluster/restart/retry-failed
    Then the response status is 409
    And the error message mentions "no failed hosts"

  @hosts
  Scenario: Restarts started at the same time: one runs, the others are refused
    Given I have created /api/v0/cluster/$cluster
    And a test host $h
    When I PUT /api/v0/host/$h with:
      """
      {"ssh_priv_key": "$TEST_KEY", "cluster": "$cluster"}
      """
    Then within 60 seconds host $h has status "disassociated"
    When 5 clients PUT /api/v0/cluster/$cluster/restart at the same time with:
      """
      {}
      """
    Then exactly 1 of the responses has status 201 and the others 409
    And within 300 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"

  @hosts
  Scenario: A rolling restart of five hosts by twos, as the hosts saw it
    Given I have created /api/v0/cluster/$cluster
    And test hosts $h1 to $h5 in cluster $cluster
    When I PUT /api/v0/cluster/$cluster/restart with:
      """
      {"batch": 2}
      """
    Then the response status is 201
    And within 300 seconds GET /api/v0/cluster/$cluster/restart has "finished" at "/status"
    And the response field "/restarted" is ["$h1", "$h2", "$h3", "$h4", "$h5"]
    And the response field "/failed_hosts" is []
    And the test hosts $h1 to $h5 each rebooted once, never more than 2 down at a time
