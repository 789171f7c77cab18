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
